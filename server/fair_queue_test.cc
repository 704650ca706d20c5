#include "server/fair_queue.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace lesion::server {
namespace {

using ::testing::ElementsAre;

std::vector<std::string> Drain(FairQueue<std::string>& queue) {
  std::vector<std::string> out;
  while (auto item = queue.Pop()) out.push_back(*item);
  return out;
}

std::vector<std::string> Order(const FairQueue<std::string>& queue) {
  std::vector<std::string> out;
  for (const std::string* item : queue.InServiceOrder()) out.push_back(*item);
  return out;
}

TEST(FairQueue, UsersAreServedRoundRobinEachInArrivalOrder) {
  FairQueue<std::string> queue;
  for (const char* item : {"a1", "a2", "a3"}) queue.Push("alice", item);
  queue.Push("bob", "b1");
  queue.Push("carol", "c1");
  queue.Push("bob", "b2");
  EXPECT_EQ(queue.size(), 6);
  EXPECT_THAT(Order(queue), ElementsAre("a1", "b1", "c1", "a2", "b2", "a3"));
  EXPECT_THAT(Drain(queue), ElementsAre("a1", "b1", "c1", "a2", "b2", "a3"));
  EXPECT_TRUE(queue.empty());
  EXPECT_EQ(queue.Pop(), std::nullopt);
}

TEST(FairQueue, AUserWhoArrivesLaterWaitsBehindTheUsersAlreadyQueued) {
  FairQueue<std::string> queue;
  queue.Push("alice", "a1");
  queue.Push("alice", "a2");
  EXPECT_EQ(*queue.Pop(), "a1");
  queue.Push("bob", "b1");  // alice (a2) is already in line
  EXPECT_THAT(Drain(queue), ElementsAre("a2", "b1"));
}

TEST(FairQueue, RemoveIfDropsItemsAndUsersLeftWithNone) {
  FairQueue<std::string> queue;
  queue.Push("alice", "x");
  queue.Push("bob", "b1");
  queue.Push("alice", "a2");
  queue.Push("carol", "x");
  EXPECT_EQ(queue.RemoveIf([](const std::string& item) { return item == "x"; }), 2);
  EXPECT_EQ(queue.size(), 2);
  EXPECT_THAT(Drain(queue), ElementsAre("a2", "b1"));  // carol is gone; alice keeps her turn
}

TEST(FairQueue, TakeAllEmptiesTheQueue) {
  FairQueue<std::string> queue;
  queue.Push("alice", "a1");
  queue.Push("bob", "b1");
  EXPECT_THAT(queue.TakeAll(), ::testing::UnorderedElementsAre("a1", "b1"));
  EXPECT_TRUE(queue.empty());
  queue.Push("bob", "b2");
  EXPECT_THAT(Drain(queue), ElementsAre("b2"));
}

}  // namespace
}  // namespace lesion::server
