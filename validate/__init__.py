"""Plan real measurements, run them with a runner, calibrate the estimated surfaces."""
