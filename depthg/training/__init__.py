"""Training: the DepthG training loop and the self-supervised pretraining of the synthetic backbone."""
