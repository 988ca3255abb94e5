"""Estimate prefill/decode surfaces, select engines under an SLA, write Dynamo artifacts."""
