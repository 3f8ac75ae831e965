"""MNIST transfer learning."""
