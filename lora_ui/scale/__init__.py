"""Scale-out: the Ray backend (optional; `pip install -r requirements-ray.txt`)."""
