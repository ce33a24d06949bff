"""Host-side input pipeline (tf.data)."""
