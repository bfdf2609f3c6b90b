"""Mocap import: BVH reading/writing, DeepMimic and FBX clips, joint maps onto the 22 SMPL joints."""
