"""Stream processors: pure stage cores plus thin faust agents around them."""
