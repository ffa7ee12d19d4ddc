module crust/hack/tarshapes

go 1.19
