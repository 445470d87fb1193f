/// The built-in calibration text for `calibrate` when no `text_path` is given: a mix of
/// English prose, technical writing, source code, JSON, and Chinese, so that K/V ranges seen
/// in calibration cover the kinds of input a server meets. It was written for Kvant and shares
/// no text with the GPL-3 licence used to measure perplexity (that text stays held out).
public enum CalibrationSample {
    public static let text: String = #"""
The harbour town woke slowly. Fishing boats came in before dawn, their decks slick with salt and
scales, and by seven the market was loud with bargaining. Mara ran the bakery on the corner; she
had learned the trade from her grandmother, who believed that bread should be judged by its crust
and people by how they treated strangers. On Tuesdays the ferry brought visitors from the mainland,
and the café filled with hikers comparing maps, students arguing about exams, and an old man who
always ordered two coffees and drank only one.

Why do some cities flourish while others decline? Economists point to trade routes, institutions,
and the accumulation of skills; historians add accident and geography. A river crossing becomes a
market, the market a town, the town a capital. Yet the same river that brought prosperity can bring
floods, and the same harbour that welcomed merchants once welcomed invaders. Nothing is guaranteed.

Installation notes. Before upgrading the cluster, drain each node and wait until its pods are
rescheduled. Check free disk space (at least 20 GB per node) and memory pressure; a node reporting
MemoryPressure=True must not receive new workloads. Roll the control plane first, then the workers,
one availability zone at a time. If the health check fails three times in a row, roll back.

Q: What is the difference between latency and throughput?
A: Latency is how long one request takes from start to finish; throughput is how many requests the
system completes per second. Batching usually raises throughput at the cost of latency.

```python
import heapq
from dataclasses import dataclass, field

@dataclass(order=True)
class Job:
    priority: int
    name: str = field(compare=False)

def schedule(jobs, workers=4):
    """Assign jobs to the least-loaded worker, highest priority first."""
    heap = [(0, w) for w in range(workers)]
    plan = {w: [] for w in range(workers)}
    for job in sorted(jobs):
        load, w = heapq.heappop(heap)
        plan[w].append(job.name)
        heapq.heappush(heap, (load + job.priority, w))
    return plan
```

```swift
struct RingBuffer<Element> {
    private var storage: [Element?]
    private var head = 0, count = 0
    init(capacity: Int) { storage = Array(repeating: nil, count: capacity) }
    mutating func push(_ x: Element) {
        storage[(head + count) % storage.count] = x
        if count < storage.count { count += 1 } else { head = (head + 1) % storage.count }
    }
}
```

{"id": 4127, "status": "shipped", "items": [{"sku": "A-19", "qty": 3, "price": 12.50},
{"sku": "C-07", "qty": 1, "price": 149.99}], "customer": {"name": "Li Wei", "country": "SG"}}

SELECT region, COUNT(*) AS orders, ROUND(AVG(total), 2) AS avg_total
FROM orders WHERE created_at >= '2024-01-01' GROUP BY region ORDER BY orders DESC LIMIT 10;

春天来了，山上的雪慢慢融化，小河里的水变得清澈起来。村子里的孩子们跑到田野里放风筝，老人们坐在门口晒太阳，聊着今年的收成。
城市里，地铁站人来人往，年轻人低头看着手机，匆匆忙忙地去上班。科技改变了生活的节奏，但人们对家的思念从来没有改变。
学习一门新的语言需要耐心：每天读一点，写一点，说一点，慢慢地就会进步。

The committee met on Thursday to review the budget. Revenue rose 4.2% year over year, driven by
subscriptions, while hardware sales fell for the third quarter in a row. Two members asked for a
detailed breakdown of cloud costs, which grew faster than usage. The chair proposed a hiring freeze
until March; the motion passed six votes to three. Next meeting: 14:00, room 3B, agenda to follow.

Dear Sam, thank you for your letter and the photographs from the mountains. The lake looks exactly
as I remember it, cold and green and perfectly still. I have started painting again, mostly small
watercolours of the garden, and I am surprised how much I had forgotten. Write soon. — Ana
"""#
}
