import os

# Quiet TensorFlow's C++ logging in tests; set before any test module imports TensorFlow.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
