"""YAML -> validated frozen records (see load.py and models.py)."""

from hwnas.config.load import load_device_profile, load_record, load_search_space
from hwnas.config.models import Budgets, DeviceProfile, SearchSpace

__all__ = ["Budgets", "DeviceProfile", "SearchSpace", "load_device_profile", "load_record",
           "load_search_space"]
