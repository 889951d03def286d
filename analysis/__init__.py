"""mnist-sweeps analysis: reads what the tracking stores hold; never trains."""
