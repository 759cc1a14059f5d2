"""Pure decisions: values in, values out. No sockets, files, clocks, sleeps or logging."""
