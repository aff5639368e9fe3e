"""YAML -> validated frozen records (see load.py and models.py)."""

# the knobs declare their own sections of a search space's ``knobs:``; importing them here
# means no search space is read before every built-in knob is registered
import hwnas.knobs  # noqa: F401
from hwnas.config.load import load_device_profile, load_record, load_search_space
from hwnas.config.models import Budgets, DeviceProfile, SearchSpace

__all__ = ["Budgets", "DeviceProfile", "SearchSpace", "load_device_profile", "load_record",
           "load_search_space"]
