"""`dcp-desktop`: the Qt window over the Pipeline (see window.py for the layout and worker.py for
the threads). The GUI never imports llama_cpp: it talks to the engine through EngineWorker."""
