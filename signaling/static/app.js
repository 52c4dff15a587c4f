// placeholder replaced by the demo page
