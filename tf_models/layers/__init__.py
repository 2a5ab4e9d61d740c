"""Keras 3 layers of the DIEN, MIMN and baseline models, one layer per module.

Every layer is registered as Keras serializable (package "uic"), takes its initializers as
constructor arguments, and `Layer.from_config(layer.get_config())` rebuilds it.
"""

from tf_models.layers.dice import Dice
from tf_models.layers.din_attention import DinAttention
from tf_models.layers.gru_cell import GRUCell
from tf_models.layers.id_hashing import IdHashing
from tf_models.layers.interest_evolution import InterestEvolution
from tf_models.layers.mimn_cell import MIMNCell
from tf_models.layers.mlp import MLP

__all__ = ["Dice", "DinAttention", "GRUCell", "IdHashing", "InterestEvolution", "MIMNCell", "MLP"]
