-- wrk script: replays the pre-signed deliveries that bench/zoom_requests.py wrote (path as its argument).
local requests = {}
local i = 0

function init(args)
  for line in io.lines(args[1]) do
    local sig, ts, body = line:match("([^\t]+)\t([^\t]+)\t(.+)")
    requests[#requests + 1] = wrk.format("POST", "/webhooks/zoom", {
      ["content-type"] = "application/json",
      ["x-zm-signature"] = sig,
      ["x-zm-request-timestamp"] = ts,
    }, body)
  end
end

function request()
  i = i % #requests + 1
  return requests[i]
end
