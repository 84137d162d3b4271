"""The alert path's operator side: Monitoring policies plan/apply, the functions' deploy."""
