"""Suite-wide settings: the tests use small tensors, for which one CPU thread is fastest
and immune to oversubscription when other processes share the cores."""

import torch

torch.set_num_threads(1)
