"""The one entry point: ``slimq.quantize(model, config, data, output)``, dispatched by config type."""
