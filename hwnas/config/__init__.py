"""YAML -> validated frozen records (see load.py and models.py)."""

# the knobs declare their own sections of a search space's ``knobs:``; importing them here
# means no search space is read before every built-in knob is registered
from hwnas import knobs
from hwnas.config.load import load_device_profile, load_record, load_search_space
from hwnas.config.models import Budgets, DeviceProfile, SearchSpace

__all__ = ["Budgets", "DeviceProfile", "SearchSpace", "knobs", "load_device_profile",
           "load_record", "load_search_space"]
