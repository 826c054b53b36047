"""Jobs: their plain data (model), their durable store (store) and their errors."""
