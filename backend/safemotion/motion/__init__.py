"""Motion core: skeletons, rotations, HumanML3D features and the SMPL body."""
