"""nas-sepconv: convert CNNs to separable convolutions, and search the accuracy-vs-MACs front."""
from .specs import BlockSpec, KINDS
