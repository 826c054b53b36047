"""The gRPC service: api → jobs/engine → native."""
