"""ZeroMQ transport between actor and learner; knows nothing of learning."""
