"""The example application: an office jukebox without the hardware."""
