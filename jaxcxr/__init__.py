"""jaxcxr: JAX/Flax training system for COVID-19 / viral pneumonia detection on chest X-rays."""

CLASS_NAMES_3 = ('COVID', 'Normal', 'Viral Pneumonia')
CLASS_NAMES_4 = ('COVID', 'Normal', 'Viral Pneumonia', 'Lung_Opacity')
