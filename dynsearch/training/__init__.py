"""Training: the LightningModule and callbacks, one trial's fit and measurement, the Ray Tune trainable."""
