local t = timer.now()
print(pcall(redis.connect, "redis://127.0.0.1:60493", {connect_timeout = 0.3}))
print(timer.now() - t)
