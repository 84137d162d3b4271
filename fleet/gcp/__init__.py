"""Google Cloud API clients used by the operator side (Compute); no fleet logic above them."""
