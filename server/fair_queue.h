// FairQueue<T>: the queue of one executor. Each user's items wait in arrival order, and users are
// served round-robin: the front user's oldest item, then that user goes to the back. So one user's
// hundred experiments delay another user's next one by at most one experiment per user ahead.
//
//   FairQueue<Task> queue;
//   queue.Push("alice", a1);  queue.Push("alice", a2);  queue.Push("bob", b1);
//   queue.Pop();  // a1, then b1, then a2
//
// Thread-compatible: the engine guards every executor's queue with its one mutex.
#ifndef LESION_SERVER_FAIR_QUEUE_H_
#define LESION_SERVER_FAIR_QUEUE_H_

#include <algorithm>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace lesion::server {

template <typename T>
class FairQueue {
 public:
  void Push(const std::string& user, T item) {
    std::deque<T>& queue = by_user_[user];
    if (queue.empty()) users_.push_back(user);
    queue.push_back(std::move(item));
    ++size_;
  }

  // The next item in service order; nullopt when empty.
  std::optional<T> Pop() {
    if (users_.empty()) return std::nullopt;
    const std::string user = users_.front();
    users_.pop_front();
    std::deque<T>& queue = by_user_.at(user);
    T item = std::move(queue.front());
    queue.pop_front();
    if (queue.empty()) {
      by_user_.erase(user);
    } else {
      users_.push_back(user);
    }
    --size_;
    return item;
  }

  // Every item, in the order Pop would return them.
  std::vector<const T*> InServiceOrder() const {
    std::vector<const T*> order;
    std::deque<std::string> users = users_;
    std::map<std::string, size_t> taken;
    while (!users.empty()) {
      const std::string user = users.front();
      users.pop_front();
      const std::deque<T>& queue = by_user_.at(user);
      order.push_back(&queue[taken[user]++]);
      if (taken[user] < queue.size()) users.push_back(user);
    }
    return order;
  }

  // Removes every item for which `pred(item)` holds; how many.
  template <typename Pred>
  int64_t RemoveIf(Pred pred) {
    int64_t removed = 0;
    for (auto it = by_user_.begin(); it != by_user_.end();) {
      std::deque<T>& queue = it->second;
      const size_t before = queue.size();
      queue.erase(std::remove_if(queue.begin(), queue.end(), pred), queue.end());
      removed += static_cast<int64_t>(before - queue.size());
      if (queue.empty()) {
        users_.erase(std::find(users_.begin(), users_.end(), it->first));
        it = by_user_.erase(it);
      } else {
        ++it;
      }
    }
    size_ -= removed;
    return removed;
  }

  // Empties the queue, returning every item (in no particular order).
  std::vector<T> TakeAll() {
    std::vector<T> all;
    for (auto& [user, queue] : by_user_) {
      for (T& item : queue) all.push_back(std::move(item));
    }
    by_user_.clear();
    users_.clear();
    size_ = 0;
    return all;
  }

  bool empty() const { return size_ == 0; }
  int64_t size() const { return size_; }

 private:
  std::map<std::string, std::deque<T>> by_user_;  // queued items per user, in arrival order
  std::deque<std::string> users_;                 // users with queued items, in service order
  int64_t size_ = 0;
};

}  // namespace lesion::server

#endif  // LESION_SERVER_FAIR_QUEUE_H_
