"""Discrete-event simulation of devices on a virtual clock, over the real scheduling code.

The simulator builds the same `DeviceEngine`, schedulers, page pools, multiplexer and quota
adapter as a real deployment; only the lanes differ: instead of running a batch they ask a cost
model how long it would take, and the clock jumps to the next finish or arrival.
"""

from coserve.simulator.clock import VirtualClock
from coserve.simulator.cluster import SimCluster, SimDeviceSpec, SimModel
from coserve.simulator.cost import BatchShape, MeshModel, RooflineCost, batch_shape
from coserve.simulator.lanes import SimulatedLanes
from coserve.simulator.sim_engine import SimEngine

__all__ = ["BatchShape", "MeshModel", "RooflineCost", "SimCluster", "SimDeviceSpec", "SimEngine", "SimModel",
           "SimulatedLanes", "VirtualClock", "batch_shape"]
