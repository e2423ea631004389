"""ROS 2 bridge to the real Franka arm (rclpy or Cyclone DDS backends). Not yet built: see DESIGN.md."""
