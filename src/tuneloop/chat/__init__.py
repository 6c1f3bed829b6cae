"""Chat templates and loss masks: the one place that turns conversations into token ids."""
