"""What a running web process or worker needs to turn uploads into vectors and rank them: nothing here
imports training, evaluation or the data generator (tests/test_architecture.py checks it)."""
