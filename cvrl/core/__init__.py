"""What every part leans on: devices and meshes, the process runtime, the command line, errors."""
