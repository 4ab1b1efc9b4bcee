"""Training of the encoders, the instance towers and the small second-stage heads, and the model build."""
