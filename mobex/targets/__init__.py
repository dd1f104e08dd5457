"""Export targets, one module each (tflite, coreml, executorch), registered in mobex.plugins; base.py holds
the Target protocol and the values that cross the export stage."""
