"""Judge measurement: sensitivity, agreement, and a human-labelled sample."""
