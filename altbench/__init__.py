"""altbench: benchmark the architectures challenging the Transformer.

Data flows one way: suite -> cells -> isolated workers -> store -> reports.
"""

__version__ = "0.1.0"
