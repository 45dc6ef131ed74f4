"""Ray actors of a run (`roll train CONFIG` creates them): `InferenceWorker` (rome's OpenAI-compatible server
on vLLM) and `TrainerWorker` (DeepSpeed over the HF model). Both are plain classes that the driver wraps
with `ray.remote`, so the tests can also drive them in-process."""
