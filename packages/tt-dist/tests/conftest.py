import sys
from pathlib import Path

# the tiny model module is shared with the torchrun worker script, which runs by path
sys.path.insert(0, str(Path(__file__).parent))
