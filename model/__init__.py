"""The blur detector: the DPN and its loss, handcrafted baselines, metrics, training on releases
(``blurset.model.train.main``), evaluation and applications of a trained model."""
