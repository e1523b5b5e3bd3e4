"""Fields: what is fitted — functions from points to signed distance."""
