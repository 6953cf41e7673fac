"""Training: fine-tune or train the FSVOS network (``fsvos train CONFIG``)."""
