"""Experience layer: the durable store of sensor and action streams, its retention and sampling."""
