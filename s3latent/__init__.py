"""s3latent: an S3 gateway that stores AI-generated images as compressed latents."""

__version__ = "0.1.0"
