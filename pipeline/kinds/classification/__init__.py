"""Classification, relevance and regression teachers (one row of logits or one score per text;
pairs read as one input): inference (torch, ONNX Runtime), the cache writer, the training stream,
the methods and losses, the recipe and the evaluation."""
