"""Model fixtures: tiny Wan bundles for tests."""
