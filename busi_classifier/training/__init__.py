"""Training: the Keras model, augmentation and the training loop (TensorFlow world)."""
